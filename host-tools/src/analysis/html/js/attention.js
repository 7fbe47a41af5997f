// attention.js — the pattern thumbnails of every head and the large view of the
// selected head, from the prompt's byte-encoded lower triangles.
function patternsOf(p){
  if(p._A)return p._A;
  const n=p.tokens.length,m=Math.ceil(n/p.pool);
  p._A={u:b64(p.patterns),m:m,tri:m*(m+1)/2,pool:p.pool};return p._A;
}
// Attention from (pooled) query q to (pooled) key k of head (l, h), in [0, 1].
function att(A,l,h,q,k){return k>q?0:A.u[(l*H+h)*A.tri+q*(q+1)/2+k]/255;}
function drawThumbs(){
  const p=D.prompts[S.prompt],A=patternsOf(p),box=$('thumbs');box.innerHTML='';
  const W=box.clientWidth||1300,gap=6;
  const size=Math.max(24,Math.min(150,Math.floor((W-(H-1)*gap)/H)-8));
  box.style.gridTemplateColumns='repeat('+H+','+(size+8)+'px)';
  for(let l=0;l<L;l++)for(let h=0;h<H;h++){
    const d=el('div',{class:'thumb','data-l':l,'data-h':h},box);
    const [c,x]=mkCanvas(d,size,size,'heatmap');c.id='hm-'+headName(l,h);
    const cell=size/A.m;
    drawCells(x,0,0,A.m,A.m,cell,cell,(q,k)=>k>q?null:seq(att(A,l,h,q,k)));
    countColours(c);
    const compact=size<100;
    el('div',null,d).innerHTML='<b>'+headName(l,h)+'</b>'+(compact?'<br>':' ')+'<span class="sc">'+(compact?'p'+f2(p.prev[l][h]).replace(/^0\./,'.')+' i'+f2(p.ind[l][h]).replace(/^0\./,'.'):'p '+f2(p.prev[l][h])+' · i '+f2(p.ind[l][h]))+'</span>';
    d.addEventListener('click',()=>selectHead(l,h));
    c.addEventListener('mousemove',ev=>{const b=c.getBoundingClientRect();const q=Math.floor((ev.clientY-b.top)/cell),k=Math.floor((ev.clientX-b.left)/cell);if(q<0||k<0||q>=A.m||k>q){hideTip();return;}showTip(ev,headName(l,h)+'  query '+q*A.pool+' → key '+k*A.pool+'  '+att(A,l,h,q,k).toFixed(3));});
    c.addEventListener('mouseleave',hideTip);
  }
  $('attn-src').textContent='Patterns: '+p.source_patterns+'.'+(A.pool>1?' Shown averaged over blocks of '+A.pool+' positions.':'');
  const lg=$('attn-legend');lg.innerHTML='';legend(lg,'seq',0,1,'attention weight');
}
function drawMain(){
  const p=D.prompts[S.prompt],A=patternsOf(p),[l,h]=S.head,box=$('main-view');box.innerHTML='';
  const m=A.m,cell=clamp(Math.floor(560/m),2,18);
  const labels=[];for(let q=0;q<m;q++){const i=q*A.pool;labels.push(i+' '+p.labels[i]);}
  heatmap(box,{rows:m,cols:m,cell:cell,colour:(q,k)=>k>q?null:seq(att(A,l,h,q,k)),rowLabels:labels,colLabels:labels,cls:'heatmap main',
    tip:(q,k)=>k>q?null:headName(l,h)+'  query '+labels[q]+'  →  key '+labels[k]+'\nattention '+att(A,l,h,q,k).toFixed(3)}).id='hm-main';
  $('main-title').textContent=headName(l,h)+'  (previous-token '+f2(p.prev[l][h])+', induction '+f2(p.ind[l][h])+' on this prompt)';
  document.querySelectorAll('.thumb').forEach(t=>t.classList.toggle('sel',+t.dataset.l===l&&+t.dataset.h===h));
}
